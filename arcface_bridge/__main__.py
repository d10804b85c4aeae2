"""``python -m arcface_bridge COMMAND [args...]``, the same as the installed ``arcface-bridge`` command."""

from arcface_bridge import main

main()
