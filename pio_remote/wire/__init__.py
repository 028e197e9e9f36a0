"""Sans-IO protocols every role shares: the routing envelope, Noise, sessions, transfers,
Unity's report format and serial events. Pure code: no sockets, no trio, nothing of ours."""
