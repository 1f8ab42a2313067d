"""What the processes of one deployment share.

Nothing, in the embedded default (:class:`~flowserve.cluster.local.LocalCluster`: one
process, its own limits, its own runs); Redis when ``FLOWSERVE_REDIS_URL`` is set
(:class:`~flowserve.cluster.redis.RedisCluster`): rate limits and concurrency caps counted
for all processes at once, stop requests and cache invalidations delivered to every
process, and each run's events kept in a Redis stream, so a client can resume on any
process. The interface is :class:`~flowserve.cluster.base.Cluster`.
"""
