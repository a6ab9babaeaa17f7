"""`python -m softprompt.cli` (and torchrun / accelerate launch -m softprompt.cli)."""

from softprompt.cli import main

main()
