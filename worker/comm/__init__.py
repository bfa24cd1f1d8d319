"""What ops are written against: ``Communicator`` (send/recv), its transports, collectives and the shuffle."""
