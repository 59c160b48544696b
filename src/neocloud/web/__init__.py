"""The console's templates and static files (served by ``server.routers.ui``)."""
