"""Command-line entry points (`ldlm-train`, `ldlm-info`, `ldlm-sample`, ...), one module each."""
