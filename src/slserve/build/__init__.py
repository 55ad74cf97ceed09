"""`slserve build`: a function folder becomes an immutable, content-addressed, verified artifact
(`slserve.build.function`). Nothing is imported here: a deployed gateway reads build keys (`build.key`) without
the build's frameworks."""
