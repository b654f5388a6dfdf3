import does_not_exist  # noqa: F401


def build():
    return None
