"""Operating the bot: statistics, users, credits by hand, blocking and broadcasts."""
