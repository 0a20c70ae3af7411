def pytest_configure(config):
    config.addinivalue_line("markers", "container: builds and runs the gateway image with podman (minutes at first)")
