"""The Discord transport (discord.py 2.x): thin cogs over the conversation core."""
