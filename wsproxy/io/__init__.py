"""The I/O drivers: asyncio Protocols around the sans-I/O core.

    front        the listener's protocols: the one place that picks WebSocket or plain
                 HTTP for a client, both ways, from one parse of its first request
    connection   a WebSocket client and its backend around one core Session
    direct       an OPEN connection's transports on relay protocols (one C call per
                 read of whole messages), and their own protocols back after; a busy
                 plain-TCP connection's sockets read by pumps (pump) through the
                 loop's hub (hub: one epoll descriptor, one loop reader)
    http_relay   a plain HTTP client connection, request by request
    upstream     the steps both take to a backend: credentials, auth, candidates, dial
    plain_http   the proxy's plain HTTP side: its relays and the backend pool
    http_pool    idle keep-alive connections to the backends
    dialer       one TCP (TLS) connection to a backend
    steps        a coroutine run by hand, without a Task: an upgrade's dial
    tls_accept   the TLS listener: bounded, counted handshakes before a Connection
    listen_socket  listening sockets as the proxy means ``host`` (``::`` is dual stack)
    ports        what the drivers ask of the process: small ``typing.Protocol`` ports,
                 and ``ConnectionSettings``, the config a connection keeps from accept

It imports core/, auth/, config, errors, units and log; never the control plane,
admin/ or the wiring (wsproxy.supervisor), which hands each driver an owner that
implements its port.
"""
