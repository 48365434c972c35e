"""What the tests share: databases, row factories, the audit, live stacks and alert sinks."""
