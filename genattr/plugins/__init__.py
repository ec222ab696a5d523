"""Built-in plugins, written exactly as a third party writes theirs."""
