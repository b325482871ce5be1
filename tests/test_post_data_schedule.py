"""The early-index schedule of a streamed restore, on pg_restore's text (no server needed)."""

from __future__ import annotations

from letta_ops.tasks.postgres.post_data_schedule import data_started, plain_name, post_data_by_table

TOC = [
    "2660; 2606 73400 CONSTRAINT public messages messages_pkey letta",
    "2661; 2606 73401 CONSTRAINT public Weird Weird_key letta",
    "2658; 1259 73402 INDEX public ix_messages_agent letta",
    "2659; 1259 73403 INDEX public parted_idx letta",
    "2670; 2606 73404 FK CONSTRAINT public messages messages_agent_id_fkey letta",
    "2671; 2620 73405 TRIGGER public messages touch letta",
]

SCRIPT = """\\restrict abc
SET statement_timeout = 0;

--
-- Name: messages messages_pkey; Type: CONSTRAINT; Schema: public; Owner: letta
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (id);

--
-- Name: Weird Weird_key; Type: CONSTRAINT; Schema: public; Owner: letta
--

ALTER TABLE ONLY public."Weird"
    ADD CONSTRAINT "Weird_key" UNIQUE (name);

--
-- Name: ix_messages_agent; Type: INDEX; Schema: public; Owner: letta
--

CREATE INDEX ix_messages_agent ON public.messages USING btree (agent_id);

--
-- Name: parted_idx; Type: INDEX; Schema: public; Owner: letta
--

CREATE INDEX parted_idx ON ONLY public.parted USING btree (id);

--
-- Name: messages messages_agent_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: letta
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES public.agents(id);

--
-- Name: messages touch; Type: TRIGGER; Schema: public; Owner: letta
--

CREATE TRIGGER touch BEFORE UPDATE ON public.messages FOR EACH ROW EXECUTE FUNCTION f();
"""


def test_a_tables_own_keys_and_indexes_go_early_the_rest_waits() -> None:
    assert post_data_by_table(TOC, SCRIPT) == {
        "public.messages": [TOC[0], TOC[2]],
        "public.Weird": [TOC[1]],
    }


def test_anything_that_does_not_pair_up_schedules_nothing() -> None:
    assert post_data_by_table(TOC[:-1], SCRIPT) == {}  # one entry short
    swapped = [TOC[2], TOC[0], *TOC[1:2], *TOC[3:]]
    assert post_data_by_table(swapped, SCRIPT) == {}  # same count, different order


def test_progress_lines_name_the_table_whose_rows_start() -> None:
    assert data_started('pg_restore: processing data for table "public.messages"\n') == (
        "public.messages"
    )
    assert data_started("pg_restore: executing SEQUENCE SET message_seq_id") is None
    assert plain_name('public."Weird"') == "public.Weird"
