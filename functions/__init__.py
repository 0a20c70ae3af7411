"""Cloud Functions entry points (functions-framework). See functions/main.py."""
