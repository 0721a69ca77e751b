"""stagechat's server: OpenAI protocol, serving, WebSocket, feedback API, engine pool and store."""
