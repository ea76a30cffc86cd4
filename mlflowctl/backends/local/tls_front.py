"""`api-tls`: the api-server's TLS front on the listen address (`mlwf up --listen ADDR`).

Airflow's api-server binds one address: with its own TLS (`[api] ssl_cert`) on 0.0.0.0 it
would listen on every interface, and every client on the head (the CLI, the probes, the
tasks) would need the CA. So the api-server stays plain HTTP on 127.0.0.1, and this process
accepts TLS on ADDR:<airflow_port> with the head's certificate and passes the bytes to it.
Remote workers reach the execution API through it and verify the certificate
(`[api] ssl_ca_file`).

    python -m mlflowctl.backends.local.tls_front LISTEN_HOST PORT TARGET_PORT CERT KEY

Only the program lives here (asyncio costs the CLI ~50 ms to import); its catalogue entry is
`services.tls_front_services`.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

CHUNK = 65536
HANDSHAKE_TIMEOUT = 10.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def _serve(host: str, port: int, target: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(
        handle, host, port, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    host, port, target, cert, key = argv
    try:
        asyncio.run(_serve(host, int(port), int(target), cert, key))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
