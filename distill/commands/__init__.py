"""The `hybrid-distill` commands, one module each: `add_parser(subparsers)` adds the command's flags and
`main(args) -> int` runs it. distill.cli collects them; `args` holds the flag types and helpers they share.
A command module imports torch, transformers and the library inside `main`, so that `--help` stays fast."""
