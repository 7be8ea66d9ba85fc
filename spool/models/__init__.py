from spool.models.spool import Spool, SpoolOutput

__all__ = ["Spool", "SpoolOutput"]
