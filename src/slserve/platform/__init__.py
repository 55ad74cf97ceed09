"""The platform every function runs on.

`base.Platform` is the interface the gateway uses; `local` runs functions as processes on this machine.
"""
