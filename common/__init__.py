"""Small helpers shared by every stage: atomic writes and user-facing errors."""
from common.atomic import atomic_write, write_csv, write_json, write_text, save_torch
from common.errors import UserError

__all__ = ["atomic_write", "write_csv", "write_json", "write_text", "save_torch", "UserError"]
