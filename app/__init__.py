"""The application: settings, the wiring of every service (built once, passed into constructors) and the commands
`bot.py` runs. The only place that knows every layer."""
