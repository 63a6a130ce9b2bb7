"""The QFLARE server: FastAPI routes over round orchestration, the device registry and storage."""
