"""REST API routers: thin — validate, call a service, return a wire model."""
