// provider/rules/chain.ts as pure functions: what a changed, missing or replaced base means for
// an overlay, which in-place changes keep the guest view, and deleting a base others use.

import { describe, expect, it } from 'vitest';
import { chainDigest, firstDifference, type ChainLayer } from '../../provider/model/chain';
import { classifyChange } from '../../provider/rules/change';
import { classifyChain, deleteRefusal, keepsGuestView } from '../../provider/rules/chain';
import type { Change } from '../../provider/rules/types';
import { WAY_FORWARD, overlayState } from './support';

const layer = (name: string, over: Partial<ChainLayer> = {}): ChainLayer => ({
  path: `/img/${name}`, dev: '2049', ino: String(name.length * 1000 + name.charCodeAt(0)), size: 196616, header: 'a'.repeat(32), seen: '2026-11-01T10:00:00.000Z', ...over,
});
const base = layer('base.qcow2');
const mid = layer('mid.qcow2');
const overlay = overlayState({ backingFile: '/img/base.qcow2' });
const same = (layers: ChainLayer[]) => ({ recorded: layers, current: { layers: layers.map((l) => ({ ...l, seen: '' })) } });

describe('backing chain rules', () => {
  it('an_unchanged_chain_needs_nothing', () => {
    expect(classifyChain(overlay, {}, same([base]))).toEqual([]);
    expect(classifyChain(overlay, {}, undefined)).toEqual([]);
  });

  it('a_base_replaced_by_another_file_is_refused_with_when_it_was_seen_and_three_ways_forward', () => {
    const now = { ...base, ino: '77', header: 'b'.repeat(32), seen: '' };
    const [c] = classifyChain(overlay, {}, { recorded: [base], current: { layers: [now] } });
    expect(c).toMatchObject({ property: 'backingFile', action: 'refuse' });
    expect(c!.reason).toMatch(/its backing file \/img\/base\.qcow2 was replaced by another file \(last seen 2026-11-01T10:00:00\.000Z as inode \d+ on device 2049, 196616 bytes.*now inode 77/);
    expect(c!.reason).toContain(`acceptBacking: "${chainDigest([now])}"`);
    expect(c!.reason).toMatch(/restore the file .*; or .*acceptBacking.*; or set allowReplace: true/);
    expect(c!.reason).toMatch(WAY_FORWARD);
  });

  it('a_base_rewritten_in_place_and_a_missing_base_are_refused', () => {
    const rewritten = classifyChain(overlay, {}, { recorded: [base], current: { layers: [{ ...base, size: 1 << 20 }] } });
    expect(rewritten[0]!.reason).toMatch(/was rewritten in place/);
    const missing = classifyChain(overlay, {}, { recorded: [base], current: { layers: [], missing: '/img/base.qcow2' } });
    expect(missing[0]!.action).toBe('refuse');
    expect(missing[0]!.reason).toMatch(/is not there any more/);
    // No digest to accept when a file is missing: restore it, or recreate.
    expect(missing[0]!.reason).not.toMatch(/acceptBacking/);
  });

  it('a_change_deeper_in_the_chain_names_its_level', () => {
    const [c] = classifyChain(overlayState({ backingFile: '/img/mid.qcow2' }), {}, { recorded: [mid, base], current: { layers: [mid, { ...base, ino: '9' }] } });
    expect(c!.reason).toMatch(/\/img\/base\.qcow2 \(the backing file of \/img\/mid\.qcow2, level 2 of its chain\) was replaced/);
  });

  it('accepting_records_exactly_the_chain_named', () => {
    const now = { ...base, ino: '77' };
    const chain = { recorded: [base], current: { layers: [now] } };
    expect(classifyChain(overlay, { acceptBacking: chainDigest([now]) }, chain)).toMatchObject([{ action: 'amend', operation: 'record' }]);
    expect(classifyChain(overlay, { acceptBacking: chainDigest([base]) }, chain)[0]!.action).toBe('refuse');
  });

  it('allow_replace_recreates_the_overlay_on_the_chain_as_it_is', () => {
    const [c] = classifyChain(overlay, { allowReplace: true }, { recorded: [base], current: { layers: [{ ...base, ino: '77' }] } });
    expect(c).toMatchObject({ action: 'replace', property: 'backingFile' });
  });

  it('a_base_being_replaced_is_refused_unless_the_overlay_opts_in', () => {
    expect(classifyChain(overlay, { backingFileUnknown: true }, same([base]))[0]).toMatchObject({ action: 'refuse', reason: expect.stringMatching(/is being replaced.*allowReplace: true on this image/) });
    expect(classifyChain(overlay, { backingFileUnknown: true, allowReplace: true }, same([base]))[0]!.action).toBe('replace');
    // A wired base at a new path that is a new image (unknown in the preview, or vouching nothing).
    for (const backingIdentity of ['unknown', { identity: 'sha256:x', from: '' }] as const) {
      expect(classifyChain(overlay, { backingFile: '/img/new.qcow2', backingIdentity }, same([base]))[0]!.action).toBe('refuse');
    }
  });

  it('an_in_place_change_vouched_by_the_base_image_is_recorded_and_nothing_else_is', () => {
    const grown = { ...base, header: 'c'.repeat(32) };
    const chain = { recorded: [base], current: { layers: [grown] } };
    const vouched = { identity: chainDigest([grown]), from: chainDigest([base]) };
    expect(classifyChain(overlay, { backingIdentity: vouched }, chain)).toMatchObject([{ action: 'amend', operation: 'record' }]);
    // A vouch from another starting point, or to another file, is drift.
    expect(classifyChain(overlay, { backingIdentity: { ...vouched, from: chainDigest([mid]) } }, chain)[0]!.action).toBe('refuse');
    expect(classifyChain(overlay, { backingIdentity: { ...vouched, identity: chainDigest([mid]) } }, chain)[0]!.action).toBe('refuse');
    // A preview that changes the base: the overlay plans to record the new identity.
    expect(classifyChain(overlay, { backingIdentity: 'unknown' }, same([base]))).toMatchObject([{ action: 'amend', operation: 'record' }]);
  });

  it('drift_refuses_every_other_change_of_the_image', () => {
    const changes = classifyChange(overlay, { size: 2n << 20n, lazyRefcounts: true }, { chain: { recorded: [base], current: { layers: [{ ...base, ino: '1' }] } } });
    expect(changes).toHaveLength(1);
    expect(changes[0]!.action).toBe('refuse');
  });

  it('under_a_running_qemu_recording_the_chain_is_allowed_and_recreating_the_overlay_is_refused', () => {
    const holder = 'process 4242 (qemu-system-x86_64)';
    const now = { ...base, ino: '77' };
    const chain = { recorded: [base], current: { layers: [now] } };
    // Recording writes nothing: the holder does not stop it.
    expect(classifyChange(overlay, { acceptBacking: chainDigest([now]) }, { chain, holder })).toMatchObject([{ action: 'amend', operation: 'record' }]);
    // A replace would delete the image the VM runs on: refused, naming the process.
    const [c] = classifyChange(overlay, { allowReplace: true }, { chain, holder });
    expect(c).toMatchObject({ property: 'backingFile', action: 'refuse' });
    expect(c!.reason).toContain(holder);
    expect(c!.reason).toMatch(/Stop the VM first/);
  });

  it('only_changes_that_keep_the_guest_view_are_vouched', () => {
    const c = (over: Partial<Change>): Change => ({ property: 'size', action: 'amend', reason: '', ...over });
    expect(keepsGuestView([c({ from: 1n, to: 2n }), c({ property: 'lazyRefcounts', from: false, to: true }), c({ property: 'backingFile', operation: 'record' })])).toBe(true);
    expect(keepsGuestView([c({ from: 2n, to: 1n })])).toBe(false);
    expect(keepsGuestView([c({ property: 'backingFile', operation: 'rebase' })])).toBe(false);
    expect(keepsGuestView([c({ property: 'dataFile', from: '/a', to: '/b' })])).toBe(false);
    expect(keepsGuestView([c({ action: 'replace' })])).toBe(false);
    // A live grow or bitmap change (through the QEMU holding the image) keeps it too.
    expect(keepsGuestView([c({ action: 'live', operation: 'resize', from: 1n, to: 2n }), c({ property: 'bitmaps', action: 'live' })])).toBe(true);
  });

  it('deleting_an_image_others_use_is_refused_naming_them', () => {
    expect(deleteRefusal('/img/base.qcow2', [])).toBeUndefined();
    const r = deleteRefusal('/img/base.qcow2', ['/img/a.qcow2', '/img/b.qcow2'])!;
    expect(r.message).toMatch(/\/img\/base\.qcow2 is the backing file of \/img\/a\.qcow2, \/img\/b\.qcow2.*Nothing was deleted/);
    expect(r.message).toMatch(WAY_FORWARD);
    const many = deleteRefusal('/img/base.qcow2', Array.from({ length: 8 }, (_, i) => `/img/${i}.qcow2`))!;
    expect(many.message).toMatch(/and 3 more/);
  });

  it('first_difference_finds_a_changed_added_or_removed_layer', () => {
    expect(firstDifference([base, mid], [base, mid])).toBe(-1);
    expect(firstDifference([base, mid], [base])).toBe(1);
    expect(firstDifference([base], [base, mid])).toBe(1);
    expect(firstDifference([base], [{ ...base, seen: 'later' }])).toBe(-1);
    expect(firstDifference([base], [{ ...base, size: 1 }])).toBe(0);
  });
});
