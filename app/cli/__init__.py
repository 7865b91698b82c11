"""The `kb` command line: parser, one module per command group, text rendering, console."""
