"""`python -m gentron` (and `torchrun -m gentron`) entry point."""

from gentron.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
