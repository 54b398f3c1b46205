-- Admission's check under its lock, in one round trip: the function takes the advisory lock that makes batches of
-- every replica take turns, then reads. Being VOLATILE, its query takes its snapshot after the lock is granted, so it
-- sees every batch committed before (one statement doing both would read with a snapshot from before the wait).
CREATE OR REPLACE FUNCTION aether_admission_state(lock_key bigint, active_states text[], tenants text[], keys text[])
RETURNS TABLE (counts json, existing text[])
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN QUERY
    SELECT coalesce((SELECT json_agg(json_build_array(c.tenant, c.n_active, c.n_gpus, c.n_pending)) FROM (
               SELECT j.tenant, count(*) AS n_active, coalesce(sum(j.gpus), 0) AS n_gpus,
                      count(*) FILTER (WHERE j.state = 'PENDING') AS n_pending
               FROM jobs j WHERE j.state = ANY(active_states) GROUP BY j.tenant) c), '[]'::json),
           (SELECT array_agg(j.id) FROM jobs j JOIN unnest(tenants, keys) AS k(tenant, key)
            ON j.tenant = k.tenant AND j.idempotency_key = k.key);
END
$$;
