"""The `modal` target: GPU functions as Modal classes with memory (and GPU) snapshots, deployed by `slserve deploy
modal`; the gateway calls their web endpoints (`slserve.platform.modal`)."""
