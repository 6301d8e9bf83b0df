"""``novarch-batch storage serve``: the embedded S3 server for demos and laptops.

Added to the main CLI with ``cli.add_command(storage)``.
"""
from __future__ import annotations

import re
import shlex
import signal
import threading

import click

from novarch_batch.pipeline.seaweed import DEFAULT_BUCKET, EmbeddedS3, SeaweedError


@click.group()
def storage() -> None:
    """Local object storage for novarch-batch."""


def bucket_name(ctx, param, value: str) -> str:
    """S3's bucket naming rules, checked before the server starts (SeaweedFS would refuse it after 30 s)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value) or ".." in value:
        raise click.BadParameter(f"'{value}' is not an S3 bucket name: 3-63 lowercase letters, digits, '.' and '-', "
                                 f"starting and ending with a letter or digit (e.g. {DEFAULT_BUCKET})")
    return value


def export_lines(server: EmbeddedS3) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in server.env().items()]


@storage.command()
@click.option("--dir", "dir_", default="./novarch-s3", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the objects, the keys and the log; reuse it to keep data and keys.")
@click.option("--port", default=8333, show_default=True, type=click.IntRange(1, 65535), help="S3 port on 127.0.0.1.")
@click.option("--bucket", default=DEFAULT_BUCKET, show_default=True, callback=bucket_name,
              help="Bucket created at start (S3's rules: 3-63 lowercase letters, digits, '.' and '-').")
def serve(dir_: str, port: int, bucket: str) -> None:
    """Run SeaweedFS's S3 gateway on 127.0.0.1 until Ctrl-C."""
    try:
        server = EmbeddedS3(dir_, port=port, bucket=bucket)
        server.start()  # Ctrl-C while starting: KeyboardInterrupt, and start() stops the server
    except SeaweedError as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    # SIGTERM (docker stop, kill) stops the server as cleanly as Ctrl-C does.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        click.echo(f"S3 on {server.endpoint_url}, bucket '{bucket}', data in {server.dir}")
        # The one place a secret is printed, on purpose: these are this local server's own
        # keys (kept in DIR/identities.json, stable across restarts of the same --dir).
        click.echo("Paste into the shell that runs novarch-batch:\n")
        for line in export_lines(server):
            click.echo(f"  {line}")
        click.echo(f"\nThen, for example:\n\n  novarch-batch submit --count 200 --out s3://{bucket}/datasets/demo\n")
        click.echo("Ctrl-C stops the server.")
        while not stop.wait(1.0):
            if not server.running:
                raise click.ClickException(f"the S3 server exited; see {server.log_path}:\n{server.log_tail()}")
    finally:
        server.stop()
        click.echo("S3 server stopped.")
