"""The API gateway: protocols in front of the platform."""
