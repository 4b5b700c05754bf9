"""`python -m mechlab.explore [--checkpoint PATH] [--port N]`: the interactive explorer
(`mechlab.apps.explore`), served on 127.0.0.1."""
from mechlab.apps.explore import main

if __name__ == "__main__":
    main()
