"""Link profiles, the HTTP client and the cloud service."""
