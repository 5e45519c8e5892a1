"""One module per `ck` verb: `configure(parser)` adds its flags, `run(args)` does the work."""
