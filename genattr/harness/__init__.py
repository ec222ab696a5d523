"""The host: hookspecs, plugin manager, registry, component protocols, cache, runner, results, leaderboard."""
