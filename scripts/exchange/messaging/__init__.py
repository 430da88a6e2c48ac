"""What the exchange tells people: the texts (`messages`, rendered from exchange/templates/),
how they leave the server (`transports`: SMTP, the SMS gateway, the outbox), and the hourly
notices (`notices`: new uploads to staff; `expiry_notices`: passwords about to expire)."""
