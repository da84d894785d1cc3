"""The one exception type for a user's mistake (bad path, bad config, wrong checkpoint)."""


class UserError(ValueError):
    """A mistake in what the user asked for; the CLI prints its one-line message and exits 2."""
