"""The platform every function runs on: `base.Platform`, the interface the gateway uses, and its request and answer
types; their Open Inference Protocol codec (`v2`); an executor per target (`local`: processes on this machine,
`aws`: Lambda, `modal`: Modal's endpoints, `remote_executor`: what the last two share); the catalog of what is
deployed (`catalog`) and the executors a gateway runs (`targets`)."""
