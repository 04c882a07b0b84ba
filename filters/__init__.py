"""The smtpd-filters production filters (installed as ``smtpd_filters``)."""
