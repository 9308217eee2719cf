"""The one exception type for problems a user can cause and fix."""


class ClipvizError(Exception):
    """A user-fixable problem: bad path, unknown model, empty prompt, corrupt file, ...

    The message always says what was wrong and what to do about it. The CLI prints it
    on one line without a traceback and exits with status 2.
    """
