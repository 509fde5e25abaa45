"""The conversation layer: a transport-free core, and thin transports (Discord, console) around it."""
