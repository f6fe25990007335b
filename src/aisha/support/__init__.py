"""Support: a person writes to the operators through the bot, an operator answers."""
