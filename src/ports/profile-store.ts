/**
 * Saved reference profiles (drift reports compare current data with them). The store keeps each
 * feature's encoded profile as opaque bytes (src/domain/profile encodes them);
 * `src/adapters/postgres/postgres-profile-store.ts` implements it.
 */

/** Where a profile's values came from, as recorded with it. */
export type ProfileSourceDescription =
  | { readonly offline: { readonly startMicros: number; readonly endMicros: number } }
  | { readonly served: Record<string, never> };

export interface ReferenceProfileInfo {
  readonly project: string;
  readonly name: string;
  readonly version: number;
  readonly featureView: string;
  readonly viewVersion: number;
  readonly source: ProfileSourceDescription;
  readonly description: string;
  readonly rows: number;
  readonly createdAt: Date;
}

export interface StoredReferenceProfile extends ReferenceProfileInfo {
  /** Feature name → encoded profile. */
  readonly profiles: ReadonlyMap<string, Uint8Array>;
}

export type NewReferenceProfile = Omit<StoredReferenceProfile, 'version' | 'createdAt'>;

export interface ProfileStore {
  /** Stores the profile as the next version of its name (1 for a new name). */
  saveReferenceProfile(profile: NewReferenceProfile): Promise<StoredReferenceProfile>;
  /** `version` 0 or absent: the latest. FStoreError 'not_found' naming what is missing. */
  getReferenceProfile(project: string, name: string, version?: number): Promise<StoredReferenceProfile>;
  /** The latest version of each name (optionally of one view), newest first. */
  listReferenceProfiles(project: string, featureView?: string): Promise<ReferenceProfileInfo[]>;
  /** Deletes every version; FStoreError 'not_found' when there is none. */
  deleteReferenceProfile(project: string, name: string): Promise<void>;
  close(): Promise<void>;
}
