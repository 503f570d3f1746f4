// The resource's bitmap plan (planBitmaps through classifyChange) and what may happen while a
// running QEMU holds the image: a grow and bitmap changes live through qmpSocket, everything else
// refused with the holder named and the way forward.

import { describe, expect, it } from 'vitest';
import type { BitmapFacts } from '../../provider/model/facts';
import { amendRequestOf, classifyChange, overallAction, refusalMessage } from '../../provider/rules/change';
import type { Change, ImageFacts } from '../../provider/rules/types';
import { MiB, plainState, rawState, v2State } from './support';

const bm = (name: string, granularity = 65536, flags: string[] = ['auto'], inconsistent = false): BitmapFacts => ({ name, granularity, flags, inconsistent });
const withBitmaps = (list: BitmapFacts[], over: Partial<ImageFacts> = {}): ImageFacts =>
  plainState({ bitmaps: list.map((b) => b.name), detail: { snapshots: [], bitmaps: list }, path: '/img/a.qcow2', ...over });
const entry = (changes: Change[], property = 'bitmaps') => changes.find((c) => c.property === property)!;
const HOLDER = 'process 4242 (qemu-system-x86_64)';

describe('bitmaps planned by provider/rules', () => {
  it('adds_declared_bitmaps_in_order_with_their_granularity_and_state', () => {
    const c = entry(classifyChange(withBitmaps([]), { bitmaps: [{ name: 'full', granularity: 4096 }, { name: 'off', enabled: false }] }));
    expect(c).toMatchObject({ action: 'amend', operation: 'bitmap' });
    expect(c.to).toEqual([
      { name: 'full', actions: [{ op: 'add', granularity: 4096 }] },
      { name: 'off', actions: [{ op: 'add' }, { op: 'disable' }] },
    ]);
    expect(c.reason).toBe("bitmaps changed in place: 'full' added; 'off' added (not recording)");
  });

  it('is_unchanged_when_the_image_has_what_is_declared_and_leaves_undeclared_bitmaps_alone', () => {
    const current = withBitmaps([bm('a'), bm('other', 4096, [])]);
    const changes = classifyChange(current, { bitmaps: [{ name: 'a', granularity: 65536, enabled: true }] });
    expect(entry(changes)).toMatchObject({ action: 'none' });
    expect(overallAction(changes)).toBe('none');
  });

  it('removes_undeclared_bitmaps_only_with_manageAllBitmaps', () => {
    const c = entry(classifyChange(withBitmaps([bm('a'), bm('stray')]), { bitmaps: [{ name: 'a' }], manageAllBitmaps: true }));
    expect(c.to).toEqual([{ name: 'stray', actions: [{ op: 'remove' }] }]);
  });

  it('enables_and_disables_in_place', () => {
    const c = entry(classifyChange(withBitmaps([bm('a'), bm('b', 65536, [])]), { bitmaps: [{ name: 'a', enabled: false }, { name: 'b', enabled: true }] }));
    expect(c.to).toEqual([{ name: 'a', actions: [{ op: 'disable' }] }, { name: 'b', actions: [{ op: 'enable' }] }]);
  });

  it('refuses_a_granularity_change_unless_allowReset_then_removes_and_adds', () => {
    const current = withBitmaps([bm('a')]);
    const refused = entry(classifyChange(current, { bitmaps: [{ name: 'a', granularity: 4096 }] }));
    expect(refused.action).toBe('refuse');
    expect(refused.reason).toBe(
      "changing the granularity of bitmap 'a' from 65536 to 4096 throws away the writes it recorded. Set allowReset: true on that bitmap to " +
      'remove it and add it anew (the next backup must be a full one), or keep granularity 65536',
    );
    const reset = entry(classifyChange(current, { bitmaps: [{ name: 'a', granularity: 4096, allowReset: true }] }));
    expect(reset.to).toEqual([{ name: 'a', actions: [{ op: 'remove' }, { op: 'add', granularity: 4096 }] }]);
  });

  it('refuses_to_keep_an_inconsistent_bitmap_and_offers_the_reset', () => {
    const current = withBitmaps([bm('a', 65536, ['in-use', 'auto'], true)]);
    const r = entry(classifyChange(current, { bitmaps: [{ name: 'a' }] }));
    expect(r.action).toBe('refuse');
    expect(r.reason).toMatch(/^bitmap 'a' is inconsistent .*Set allowReset: true on that bitmap/);
    expect(entry(classifyChange(current, { bitmaps: [{ name: 'a', allowReset: true }] })).to).toEqual([{ name: 'a', actions: [{ op: 'remove' }, { op: 'add' }] }]);
  });

  it('judges_adds_as_qemu_img_bitmap_does_on_the_image_the_plan_leaves', () => {
    expect(entry(classifyChange(v2State({ path: '/img/a.qcow2' }), { bitmaps: [{ name: 'b' }] })).reason)
      .toBe("Operation add on bitmap b failed: Can't make bitmap 'b' persistent in '/img/a.qcow2': Cannot store dirty bitmaps in qcow2 v2 files");
    // Upgraded in the same plan: allowed.
    expect(entry(classifyChange(v2State({ path: '/img/a.qcow2' }), { compat: '1.1', bitmaps: [{ name: 'b' }] })).action).toBe('amend');
    expect(entry(classifyChange(withBitmaps([]), { bitmaps: [{ name: 'x' }, { name: 'x' }] })).reason).toBe("bitmap 'x' is declared twice: list each bitmap once");
    expect(entry(classifyChange(withBitmaps([]), { bitmaps: [{ name: 'g', granularity: 256 }] })).reason)
      .toBe('Operation add on bitmap g failed: Granularity must be power of 2 and at least 512');
  });

  it('keeps_bitmaps_out_of_the_amend_request_and_refuses_a_downgrade_of_an_image_with_bitmaps', () => {
    const changes = classifyChange(withBitmaps([bm('a')]), { size: 2n * MiB, bitmaps: [{ name: 'a' }, { name: 'new' }] });
    expect(amendRequestOf(changes)).toEqual({ size: 2n * MiB });
    expect(refusalMessage(classifyChange(withBitmaps([bm('a')]), { compat: '0.10' }))).toMatch(/^compat: Cannot downgrade an image with persistent dirty bitmaps \(a\)/);
  });
});

describe('an image a running QEMU holds', () => {
  const held = { holder: HOLDER };

  it('grows_and_changes_bitmaps_live_through_qmpSocket', () => {
    const changes = classifyChange(withBitmaps([bm('a')]), { size: 2n * MiB, bitmaps: [{ name: 'a', enabled: false }], qmpSocket: '/run/vm.qmp' }, held);
    expect(entry(changes, 'size')).toMatchObject({ action: 'live', operation: 'resize', to: 2n * MiB });
    expect(entry(changes, 'size').reason).toBe(`the image grows from ${MiB} to ${2n * MiB} bytes, live through /run/vm.qmp (${HOLDER} holds the image)`);
    expect(entry(changes)).toMatchObject({ action: 'live', operation: 'bitmap', to: [{ name: 'a', actions: [{ op: 'disable' }] }] });
    expect(overallAction(changes)).toBe('live');
    expect(amendRequestOf(changes)).toBeUndefined();
  });

  it('refuses_every_other_change_naming_the_holder', () => {
    for (const desired of [{ size: MiB / 2n, allowShrink: true }, { refcountBits: 64 }, { compat: '0.10' as const }, { lazyRefcounts: true }]) {
      const changes = classifyChange(plainState(), { ...desired, qmpSocket: '/run/vm.qmp' }, held);
      const msg = refusalMessage(changes)!;
      expect(msg).toContain(`cannot change while ${HOLDER} holds the image for writing`);
      expect(msg).toContain('Stop the VM first (only a grow and bitmap changes can be made live, through qmpSocket)');
    }
    expect(refusalMessage(classifyChange(rawState(), { dataFileRaw: false, qmpSocket: '/q' }, held))).toMatch(/^dataFileRaw: dataFileRaw cannot change while/);
  });

  it('without_qmpSocket_refuses_a_grow_and_names_the_way_forward', () => {
    const msg = refusalMessage(classifyChange(plainState(), { size: 2n * MiB }, held))!;
    expect(msg).toBe(
      `size: size cannot change while ${HOLDER} holds the image for writing (a running VM): changing it under QEMU would corrupt the image. ` +
      "Stop the VM first, or set qmpSocket to that QEMU's QMP socket to change it live",
    );
  });

  it('leaves_an_unchanged_plan_alone', () => {
    expect(overallAction(classifyChange(withBitmaps([bm('a', 65536, ['in-use', 'auto'])]), { size: MiB, bitmaps: [{ name: 'a' }] }, held))).toBe('none');
  });
});
