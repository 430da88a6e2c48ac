"""The texts the server renders itself, shipped with the tools (one installed thing, one
version): e-mail, SMS and the package README (`messages/`, `<message>.<lang>.j2`), and the web
page (`portal/`: its pages, their texts in text.yaml, and static files), and the stack viewer
both show (`viewer/`: the package's IHE_PDI/VIEWER.JS and the portal's view page), and a patient's
overview of the access trail (`trail/`, `exchange trail patient --format html`)."""

from pathlib import Path

MESSAGES = Path(__file__).parent / "messages"
PORTAL = Path(__file__).parent / "portal"
VIEWER = Path(__file__).parent / "viewer"
TRAIL = Path(__file__).parent / "trail"
