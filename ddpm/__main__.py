"""`python -m ddpm`, the same as the `ddpm` command (torchrun starts its ranks this way)."""

from ddpm.cli import main

main()
