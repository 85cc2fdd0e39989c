"""qserver: a work-queue server that speaks the beanstalkd wire protocol."""

__version__ = "0.1.0"
