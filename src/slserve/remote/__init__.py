"""One model function served away from the local platform: in a Lambda environment or a Modal container."""
