"""Run daphne on uvloop: `python -m chatsite.serve [daphne's options] chatsite.asgi:application`.

daphne installs Twisted's asyncio reactor on a loop it creates when
`daphne.server` is first imported, from the event loop policy in force then;
this sets uvloop's policy first. uvloop's C event loop and transports cost
less per streamed delta (bench/load.py at 150 streams: about a fifth less of
a core). Without uvloop (a platform it does not build on) daphne runs on
asyncio's default loop, as `daphne` itself would.
"""

import asyncio
import sys


def use_uvloop() -> bool:
    """Make new event loops uvloop's; call before anything imports daphne.server."""
    if "daphne.server" in sys.modules:
        raise RuntimeError("daphne.server is already imported: its event loop exists")
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> None:
    use_uvloop()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
