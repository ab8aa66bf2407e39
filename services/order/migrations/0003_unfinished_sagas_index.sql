-- The sweeper counts unfinished sagas (in flight and parked) on every sweep for its gauges.
-- Neither partial index covers "not ended" as a whole (`order_sagas_due` leaves out parked
-- ones), so with 100,000 ended sagas that count read the whole table each time: measured
-- 11 ms per sweep (sequential scan) against 0.08 ms with this index (an index-only scan), which holds only the
-- sagas that have not ended and so stays as small as the work in progress.
CREATE INDEX order_sagas_unfinished ON order_sagas (parked_at)
    WHERE step NOT IN ('confirmed', 'cancelled');
