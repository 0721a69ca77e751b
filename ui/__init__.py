"""stagechat's browser UI (Gradio), mounted into the FastAPI app."""
