"""prfaas glue: CLI entry point, settings, model preparation, process launching, event log."""
