"""The secure web page for recipients and partners.

It holds no file privileges of its own: every web login opens the user's own SFTP session to
sshd on this server with the password the user typed, and every file is read and written
through that session. The chroot, the PAM password rules and lockout, the account expiry and
the SFTP log apply to the web exactly as to SFTP clients.
"""
